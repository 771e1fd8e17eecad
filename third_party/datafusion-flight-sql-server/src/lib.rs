pub mod config;
pub mod service;
pub mod session;
pub mod state;
