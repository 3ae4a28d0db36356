//! Where an address is: the place and network an operator's GeoIP databases give it, the distance between
//! two places, and the [`Locator`] the detection rules ask. The lookup itself (MaxMind files) is the
//! server's; everything here is pure.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where an address is, as far as the GeoIP databases say. Every member is optional: a City database
/// gives the place, an ASN database the network's owner.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Place {
    /// ISO 3166-1 alpha-2 country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// City name (English).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Latitude, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    /// The database's accuracy radius around the coordinates, kilometres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_km: Option<u16>,
    /// Autonomous system number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// The autonomous system's organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_org: Option<String>,
}

impl Place {
    /// The coordinates, when the database has both.
    pub fn coordinates(&self) -> Option<(f64, f64)> {
        Some((self.latitude?, self.longitude?))
    }

    /// A short human name: `Berlin, DE`, `DE`, or `AS64500`, or `an unknown place`.
    pub fn label(&self) -> String {
        match (&self.city, &self.country, self.asn) {
            (Some(city), Some(country), _) => format!("{city}, {country}"),
            (Some(city), None, _) => city.clone(),
            (None, Some(country), _) => country.clone(),
            (None, None, Some(asn)) => format!("AS{asn}"),
            (None, None, None) => "an unknown place".to_owned(),
        }
    }

    /// Whether the databases said nothing.
    pub fn is_empty(&self) -> bool {
        *self == Place::default()
    }
}

/// Great-circle distance between two points (latitude, longitude in degrees), kilometres (haversine, on a
/// sphere of the Earth's mean radius: good to about 0.5%).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.1 - a.1).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Looks addresses up in the operator's GeoIP databases.
pub trait Locator: Send + Sync {
    /// Where `ip` is; `None` when no database knows it.
    fn locate(&self, ip: IpAddr) -> Option<Place>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_match_known_city_pairs() {
        let berlin = (52.52, 13.405);
        let sydney = (-33.8688, 151.2093);
        let potsdam = (52.3906, 13.0645);
        assert!((distance_km(berlin, sydney) - 16_090.0).abs() < 100.0, "{}", distance_km(berlin, sydney));
        assert!((distance_km(berlin, potsdam) - 27.0).abs() < 3.0, "{}", distance_km(berlin, potsdam));
        assert!(distance_km(berlin, berlin).abs() < 1e-9);
        // Antipodes: half the circumference, and no NaN from rounding past 1.
        let far = distance_km((0.0, 0.0), (0.0, 180.0));
        assert!((far - 20_015.0).abs() < 5.0, "{far}");
    }

    #[test]
    fn a_place_is_named_by_what_is_known() {
        let full = Place { city: Some("Berlin".into()), country: Some("DE".into()), ..Place::default() };
        assert_eq!(full.label(), "Berlin, DE");
        assert_eq!(Place { asn: Some(64500), ..Place::default() }.label(), "AS64500");
        assert_eq!(Place::default().label(), "an unknown place");
        assert!(Place::default().is_empty() && !full.is_empty());
        let json = serde_json::to_string(&Place { asn: Some(1), ..Place::default() }).unwrap();
        assert_eq!(json, r#"{"asn":1}"#, "absent members are left out of the audit detail");
    }
}
