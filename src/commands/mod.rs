pub mod demo;
pub mod doctor;
pub mod harvest;
pub mod setup;
pub mod store;
pub mod train;
