//! The controller's MQTT endpoints and which one the agent tries next.
//!
//! A cluster of tetherd replicas gives the agent every replica's endpoint at
//! enrollment (and again at each certificate renewal); when the one it uses
//! goes away, the agent moves to the next, after the session's backoff with
//! jitter, so the devices of a dead replica spread over the survivors in
//! time instead of reconnecting in one burst.

use crate::session::{SessionError, parse_mqtt_url};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
}

/// A non-empty list of endpoints with a cursor on the one in use.
#[derive(Debug, Clone)]
pub struct Endpoints {
    list: Vec<Endpoint>,
    current: usize,
}

impl Endpoints {
    /// Parses every URL; a list with a bad URL is refused whole, since the
    /// agent would otherwise fail over to an endpoint it can never use.
    pub fn parse(urls: &[String]) -> Result<Self, SessionError> {
        let mut list: Vec<Endpoint> = Vec::with_capacity(urls.len());
        for url in urls {
            let (host, port) = parse_mqtt_url(url)?;
            if !list.iter().any(|known| known.url == *url) {
                list.push(Endpoint {
                    url: url.clone(),
                    host,
                    port,
                });
            }
        }
        if list.is_empty() {
            return Err(SessionError::NoEndpoint);
        }
        Ok(Self { list, current: 0 })
    }

    pub fn current(&self) -> &Endpoint {
        &self.list[self.current]
    }

    /// Moves to the next endpoint (round robin) after the current one failed.
    pub fn fail_over(&mut self) -> &Endpoint {
        self.current = (self.current + 1) % self.list.len();
        self.current()
    }

    /// Whether there is another endpoint to fail over to.
    pub fn has_alternatives(&self) -> bool {
        self.list.len() > 1
    }

    /// Takes a newer list from tetherd, staying on the endpoint in use if the
    /// new list still has it, so a renewal does not move a healthy session.
    pub fn replace(&mut self, newer: Endpoints) {
        let in_use = self.current().url.clone();
        self.current = newer
            .list
            .iter()
            .position(|endpoint| endpoint.url == in_use)
            .unwrap_or(0);
        self.list = newer.list;
    }
}

/// The list to store from tetherd's answer: the primary URL first, then the
/// others in tetherd's order, without repeats. An answer from a tetherd that
/// predates replicas has only the primary.
pub fn failover_list(primary: &str, all: &[String]) -> Vec<String> {
    let mut list = vec![primary.to_owned()];
    for url in all {
        if !list.contains(url) {
            list.push(url.clone());
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|url| (*url).to_owned()).collect()
    }

    #[test]
    fn fails_over_round_robin_and_back_to_the_first() {
        let mut endpoints = Endpoints::parse(&urls(&[
            "mqtts://a:8883",
            "mqtts://b:8883",
            "mqtts://c:1883",
        ]))
        .expect("valid");
        assert_eq!(endpoints.current().host, "a");
        assert_eq!(endpoints.fail_over().host, "b");
        assert_eq!(endpoints.fail_over().port, 1883);
        assert_eq!(endpoints.fail_over().host, "a");
    }

    #[test]
    fn one_endpoint_fails_over_to_itself() {
        let mut endpoints =
            Endpoints::parse(&urls(&["mqtts://a:8883", "mqtts://a:8883"])).expect("valid");
        assert!(!endpoints.has_alternatives(), "repeats are one endpoint");
        assert_eq!(endpoints.fail_over().host, "a");
    }

    #[test]
    fn a_bad_url_or_an_empty_list_is_refused() {
        assert!(Endpoints::parse(&urls(&["mqtts://a:8883", "http://b"])).is_err());
        let empty = Endpoints::parse(&[]).expect_err("empty");
        assert!(empty.to_string().contains("enroll"), "{empty}");
    }

    #[test]
    fn a_newer_list_keeps_the_endpoint_in_use() {
        let mut endpoints =
            Endpoints::parse(&urls(&["mqtts://a:1", "mqtts://b:1"])).expect("valid");
        endpoints.fail_over();
        endpoints.replace(
            Endpoints::parse(&urls(&["mqtts://c:1", "mqtts://b:1", "mqtts://a:1"])).expect("valid"),
        );
        assert_eq!(endpoints.current().host, "b");
        assert!(endpoints.has_alternatives());
        endpoints.replace(Endpoints::parse(&urls(&["mqtts://d:1"])).expect("valid"));
        assert_eq!(endpoints.current().host, "d", "gone: start at the first");
    }

    #[test]
    fn the_stored_list_starts_with_the_primary_without_repeats() {
        assert_eq!(
            failover_list("mqtts://b:1", &urls(&["mqtts://a:1", "mqtts://b:1"])),
            urls(&["mqtts://b:1", "mqtts://a:1"])
        );
        assert_eq!(failover_list("mqtts://a:1", &[]), urls(&["mqtts://a:1"]));
    }
}
