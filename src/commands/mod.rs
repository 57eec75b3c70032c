pub mod demo;
pub mod doctor;
pub mod setup;
pub mod store;
