//! What crosses replicas: several tetherd processes sharing one PostgreSQL.

pub mod bus;
