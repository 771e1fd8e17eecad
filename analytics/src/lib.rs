//! # bulkhead-analytics — SQL over the lake
//!
//! Role: answer data teams' and the console's questions over the lake tables.
//! Consumes: the lake tables (`bulkhead_schemas::lake::TABLES`) and the control topic.
//! Produces: query results (CLI, Arrow Flight SQL, HTTP JSON) and control events.
//!
//! This crate is empty until the analytics issue lands.
