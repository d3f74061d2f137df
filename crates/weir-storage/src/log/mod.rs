//! The embedded log backend (work in progress): operations encoded as log
//! records ([`codec`]).

pub mod codec;
