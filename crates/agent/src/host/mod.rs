//! The device's host (issue 19): powering it off or rebooting it on an
//! operator's request ([`power`]), and which boot it is in ([`boot`]).

pub mod boot;
pub mod power;
