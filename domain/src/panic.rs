//! The text of a panic, however it was raised.

use std::any::Any;

/// The message of a panic payload: `panic!("literal")` carries a `&str`,
/// `panic!("{x}")` a `String`; anything else has no text.
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_both_payload_kinds() {
        let a = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(super::message(&*a), "plain");
        let n = 3;
        let b = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(super::message(&*b), "formatted 3");
        let c = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(super::message(&*c), "a panic without a message");
    }
}
