//! The fleet monitor (issue 18, ADR 0032): watches every device for
//! silence and for a configuration left behind, asks it for a rebirth or a
//! reload, and raises alerts when it does not answer. The checks run on one
//! replica at a time; their state is stored, so a new leader goes on where
//! the old one stopped.

pub mod silence;
pub mod rules;
