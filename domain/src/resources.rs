//! Resource sets: what a node offers and what a task needs. CPUs are kept
//! apart from custom resources (`gpu=2`) because nearly every task uses only
//! CPUs and the fast path should not touch a map.

use std::fmt;

/// A set of resources: CPUs plus named custom resources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceSet {
    /// Number of CPUs (fractional values allowed).
    pub cpus: f64,
    /// Custom resources, sorted by name, no duplicates, all amounts > 0.
    pub custom: Vec<(String, f64)>,
}

/// A malformed `k=v,...` resource list.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid resource list {input:?}: {reason}")]
pub struct ParseResourcesError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

const EPS: f64 = 1e-9;

impl ResourceSet {
    /// Just CPUs.
    pub fn cpus(cpus: f64) -> Self {
        Self { cpus, custom: Vec::new() }
    }

    /// Adds or replaces a custom resource.
    pub fn with(mut self, name: &str, amount: f64) -> Self {
        self.set(name, amount);
        self
    }

    /// Sets a custom resource (an amount of 0 removes it).
    pub fn set(&mut self, name: &str, amount: f64) {
        match self.custom.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => {
                if let Some(slot) = self.custom.get_mut(i) {
                    slot.1 = amount;
                }
            }
            Err(i) => self.custom.insert(i, (name.to_string(), amount)),
        }
        self.custom.retain(|(_, a)| *a > EPS);
    }

    /// Amount of a custom resource (0 when absent).
    pub fn get(&self, name: &str) -> f64 {
        self.custom.iter().find(|(n, _)| n == name).map(|(_, a)| *a).unwrap_or(0.0)
    }

    /// Parses `gpu=2,ssd=1` (also accepts `cpus=N` / `CPU=N`).
    pub fn parse(input: &str) -> Result<Self, ParseResourcesError> {
        let err = |reason: String| ParseResourcesError { input: input.to_string(), reason };
        let mut set = ResourceSet::default();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| err(format!("`{part}` is not name=amount")))?;
            let k = k.trim();
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
                return Err(err(format!("`{k}` is not a valid resource name")));
            }
            let v: f64 = v.trim().parse().map_err(|_| err(format!("`{}` is not a number", v.trim())))?;
            if !v.is_finite() || v < 0.0 {
                return Err(err(format!("amount of `{k}` must be a finite number >= 0")));
            }
            if k.eq_ignore_ascii_case("cpu") || k.eq_ignore_ascii_case("cpus") {
                set.cpus = v;
            } else {
                set.set(k, v);
            }
        }
        Ok(set)
    }

    /// True when every amount of `self` is available in `avail`.
    pub fn fits_in(&self, avail: &ResourceSet) -> bool {
        self.cpus <= avail.cpus + EPS && self.custom.iter().all(|(n, a)| *a <= avail.get(n) + EPS)
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &ResourceSet) {
        self.cpus += other.cpus;
        for (n, a) in &other.custom {
            let cur = self.get(n);
            self.set(n, cur + a);
        }
    }

    /// Subtracts `other` from `self`, never going below zero.
    pub fn sub(&mut self, other: &ResourceSet) {
        self.cpus = (self.cpus - other.cpus).max(0.0);
        for (n, a) in &other.custom {
            let cur = self.get(n);
            self.set(n, (cur - a).max(0.0));
        }
    }

    /// `self - used`, floored at zero, keeping every name of `self`.
    pub fn available_after(&self, used: &ResourceSet) -> ResourceSet {
        let mut out = ResourceSet { cpus: (self.cpus - used.cpus).max(0.0), custom: Vec::new() };
        for (n, a) in &self.custom {
            out.custom.push((n.clone(), (a - used.get(n)).max(0.0)));
        }
        out
    }

    /// True when it holds nothing: no CPU and no custom resource (a task
    /// of this shape waits on I/O and takes no slot).
    pub fn is_empty(&self) -> bool {
        self.cpus <= 0.0 && self.custom.is_empty()
    }

    /// Is this exactly one CPU and nothing else (the default task shape)?
    pub fn is_default_task(&self) -> bool {
        (self.cpus - 1.0).abs() < EPS && self.custom.is_empty()
    }
}

impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpus={}", self.cpus)?;
        for (n, a) in &self.custom {
            write!(f, ",{n}={a}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for ResourceSet {
    /// A map of name to amount: `{"cpus": 2.0, "gpu": 1.0}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1 + self.custom.len()))?;
        m.serialize_entry("cpus", &self.cpus)?;
        for (n, a) in &self.custom {
            m.serialize_entry(n, a)?;
        }
        m.end()
    }
}

impl<'de> serde::Deserialize<'de> for ResourceSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = std::collections::BTreeMap::<String, f64>::deserialize(d)?;
        let mut set = ResourceSet::default();
        for (n, a) in m {
            if n.eq_ignore_ascii_case("cpu") || n.eq_ignore_ascii_case("cpus") {
                set.cpus = a;
            } else if a.is_finite() {
                set.set(&n, a);
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_fit() {
        let node = ResourceSet::parse("cpus=4, gpu=2").unwrap();
        assert_eq!(node.cpus, 4.0);
        assert_eq!(node.get("gpu"), 2.0);
        assert!(ResourceSet::cpus(1.0).with("gpu", 1.0).fits_in(&node));
        assert!(!ResourceSet::cpus(1.0).with("gpu", 3.0).fits_in(&node));
        assert!(!ResourceSet::cpus(1.0).with("tpu", 1.0).fits_in(&node));
        assert!(ResourceSet::parse("gpu").is_err());
        assert!(ResourceSet::parse("gpu=-1").is_err());
        assert!(ResourceSet::parse("g/pu=1").is_err());
        assert_eq!(ResourceSet::parse("").unwrap(), ResourceSet::default());
    }

    #[test]
    fn json_is_a_map_with_cpus() {
        let r = ResourceSet::cpus(2.0).with("gpu", 1.0);
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, r#"{"cpus":2.0,"gpu":1.0}"#);
        assert_eq!(serde_json::from_str::<ResourceSet>(&j).unwrap(), r);
    }

    #[test]
    fn add_sub_available() {
        let total = ResourceSet::cpus(2.0).with("gpu", 1.0);
        let mut used = ResourceSet::default();
        used.add(&ResourceSet::cpus(1.0).with("gpu", 1.0));
        let avail = total.available_after(&used);
        assert_eq!(avail.cpus, 1.0);
        assert_eq!(avail.get("gpu"), 0.0);
        assert_eq!(avail.custom.len(), 1, "names of the total are kept");
        used.sub(&ResourceSet::cpus(5.0).with("gpu", 1.0));
        assert_eq!(used, ResourceSet::default());
    }
}
