//! The operator's GeoIP databases (`[geoip]`, MaxMind's format, read with the `maxminddb` crate): a City
//! database places a sign-in (`impossible_travel`, `new_device`, and the sign-in's audit record), an ASN
//! database makes a network an autonomous system for the network rules. Both are optional; without them
//! the login rules do not run and a network is a /24 or /48.
//!
//! A database is read into memory once at start; a new one takes a restart.

use std::net::IpAddr;
use std::path::Path;

use maxminddb::{Reader, geoip2};
use serde::{Deserialize, Serialize};
use tessera_core::geo::{Locator, Place};

/// `[geoip]`: where the databases are. An empty path: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// A GeoIP2 or GeoLite2 City database (`.mmdb`).
    pub city_db: String,
    /// A GeoIP2 or GeoLite2 ASN database (`.mmdb`).
    pub asn_db: String,
}

/// The opened databases.
pub struct GeoIp {
    city: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = |r: &Option<Reader<Vec<u8>>>| r.as_ref().map(|r| r.metadata().database_type.clone());
        f.debug_struct("GeoIp").field("city", &kind(&self.city)).field("asn", &kind(&self.asn)).finish()
    }
}

fn open(key: &str, path: &str) -> Result<Option<Reader<Vec<u8>>>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    let reader = Reader::open_readfile(Path::new(path))
        .map_err(|e| format!("geoip.{key}: cannot open {path}: {e}"))?;
    Ok(Some(reader))
}

impl GeoIp {
    /// Opens the configured databases; `None` when none is configured.
    ///
    /// # Errors
    /// One line naming the key and file that cannot be read as a MaxMind database.
    pub fn open(config: &GeoConfig) -> Result<Option<GeoIp>, String> {
        let geo = GeoIp { city: open("city_db", &config.city_db)?, asn: open("asn_db", &config.asn_db)? };
        Ok((geo.city.is_some() || geo.asn.is_some()).then_some(geo))
    }

    /// Whether a City database is loaded (the login rules need one).
    pub fn has_places(&self) -> bool {
        self.city.is_some()
    }
}

impl Locator for GeoIp {
    fn locate(&self, ip: IpAddr) -> Option<Place> {
        let ip = tessera_core::net::canonical(ip);
        let mut place = Place::default();
        if let Some(reader) = &self.city {
            match reader.lookup(ip).and_then(|r| r.decode::<geoip2::City>()) {
                Ok(Some(city)) => {
                    place.country = city.country.iso_code.map(str::to_owned);
                    place.city = city.city.names.english.map(str::to_owned);
                    place.latitude = city.location.latitude;
                    place.longitude = city.location.longitude;
                    place.accuracy_km = city.location.accuracy_radius;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "geoip: city lookup failed"),
            }
        }
        if let Some(reader) = &self.asn {
            match reader.lookup(ip).and_then(|r| r.decode::<geoip2::Asn>()) {
                Ok(Some(asn)) => {
                    place.asn = asn.autonomous_system_number;
                    place.as_org = asn.autonomous_system_organization.map(str::to_owned);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "geoip: ASN lookup failed"),
            }
        }
        (!place.is_empty()).then_some(place)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> GeoIp {
        let dir = tessera_testkit::geoip_dir();
        let config = GeoConfig {
            city_db: dir.join("test-city.mmdb").display().to_string(),
            asn_db: dir.join("test-asn.mmdb").display().to_string(),
        };
        GeoIp::open(&config).unwrap().unwrap()
    }

    #[test]
    fn the_fixture_places_documentation_ranges() {
        let geo = fixture();
        let berlin = geo.locate("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(berlin.label(), "Berlin, DE");
        assert_eq!(
            (berlin.asn, berlin.as_org.as_deref(), berlin.accuracy_km),
            (Some(64500), Some("Example Carrier DE"), Some(20))
        );
        let mapped = geo.locate("::ffff:198.51.100.3".parse().unwrap()).unwrap();
        assert_eq!(mapped.label(), "Sydney, AU", "an IPv4-mapped address is looked up as IPv4");
        assert_eq!(geo.locate("2001:db8:1::9".parse().unwrap()).unwrap().asn, Some(64502));
        assert_eq!(geo.locate("10.0.0.1".parse().unwrap()), None, "unknown: nothing, not an error");
    }

    #[test]
    fn no_path_no_database_and_a_bad_file_names_its_key() {
        assert!(GeoIp::open(&GeoConfig::default()).unwrap().is_none());
        let bad = GeoConfig { city_db: "/nonexistent/city.mmdb".into(), asn_db: String::new() };
        let err = GeoIp::open(&bad).unwrap_err();
        assert!(err.starts_with("geoip.city_db: cannot open /nonexistent/city.mmdb"), "{err}");
        let not_mmdb = GeoConfig {
            city_db: String::new(),
            asn_db: concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into(),
        };
        let err = GeoIp::open(&not_mmdb).unwrap_err();
        assert!(err.starts_with("geoip.asn_db: cannot open"), "{err}");
    }
}
