pub mod demo;
pub mod dict;
pub mod doctor;
pub mod eval;
pub mod harvest;
pub mod setup;
pub mod store;
pub mod train;
