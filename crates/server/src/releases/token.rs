//! Download tokens: what a device presents to fetch a release's binary.
//! A token is `DEVICE.MAC`, MAC the HMAC-SHA256 (base64url) of the device
//! and the release's version under tetherd's token key, so it is good
//! only for that device and that release, needs no table, and is checked
//! by any replica. It covers every platform of the release: tetherd does
//! not know a device's platform, and a device may as well read another
//! platform's binary of a release it was given. Deleting the device ends
//! its tokens (the download checks that the device exists).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tether_proto::DeviceId;

use super::keys::ReleaseKeys;

fn message(device: &str, version: &str) -> Vec<u8> {
    format!("tether agent download v1\ndevice {device}\nversion {version}\n").into_bytes()
}

/// The token `device` downloads release `version` with.
pub fn download_token(keys: &ReleaseKeys, device: &DeviceId, version: &str) -> String {
    let mac = ring::hmac::sign(keys.token_key(), &message(device.as_str(), version));
    format!("{device}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
}

/// The device a token was made for, if it is one of ours for `version`.
pub fn device_of(keys: &ReleaseKeys, token: &str, version: &str) -> Option<DeviceId> {
    let (device, mac) = token.rsplit_once('.')?;
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    ring::hmac::verify(keys.token_key(), &message(device, version), &mac).ok()?;
    DeviceId::new(device).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_for_its_device_and_release_only() {
        let keys = ReleaseKeys::generate();
        let pi = DeviceId::new("pi-1").expect("name");
        let token = download_token(&keys, &pi, "1.2.0");
        assert_eq!(device_of(&keys, &token, "1.2.0"), Some(pi.clone()));
        assert_eq!(device_of(&keys, &token, "1.1.0"), None, "another release");
        let forged = token.replacen("pi-1", "pi-2", 1);
        assert_eq!(device_of(&keys, &forged, "1.2.0"), None, "another device");
        let other_keys = ReleaseKeys::generate();
        assert_eq!(device_of(&other_keys, &token, "1.2.0"), None, "another key");
        assert_eq!(device_of(&keys, "garbage", "1.2.0"), None);
    }
}
