//! What each subcommand does, on top of the library modules.

pub mod env;
