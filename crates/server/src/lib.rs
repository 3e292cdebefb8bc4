//! tetherd, the tether controller.

pub mod device_link;
pub mod store;
