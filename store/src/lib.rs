//! A node's shared-memory object store.
//!
//! # Layout
//! - [`arena`]: the memfd and its mapping (shared with executors), pre-faulting.
//! - [`alloc`]: first-fit allocation of ranges in it (pure bookkeeping).
//! - [`store`]: the object table: create, seal, pin, free, spill, restore.
//! - [`view`]: `Bytes` over a stored object (arena range or spill file).

#![warn(missing_docs)]

pub mod alloc;
pub mod arena;
pub mod binaries;
pub mod store;
pub mod view;

pub use arena::{Arena, ENV_STORE_FD};
pub use store::{Claim, Location, Store, StoreError, StoreStats, spill_offset};
pub use view::{arena_bytes, spilled_bytes};
