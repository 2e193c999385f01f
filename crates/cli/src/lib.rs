//! The `medallion` operator command. Each subcommand is a module with a function that writes
//! its report to any `Write`, so tests can read what an operator would see.

pub mod audit;
pub mod demo;
pub mod dlq;
pub mod operator;
pub mod replay;
pub mod schemas;
pub mod stages;
pub mod topics;
