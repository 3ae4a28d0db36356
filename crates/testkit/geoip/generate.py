#!/usr/bin/env python3
"""Writes the GeoIP fixture databases the tests use: a City and an ASN database in MaxMind's format.

Every network is a documentation range (RFC 5737, RFC 3849), so nothing here names a real network. The
places are real cities, far enough apart (or close enough) for the travel and network rules to have
something to find. Run it from anywhere; it needs `pip install mmdb-writer`:

    python3 crates/testkit/geoip/generate.py

The output is committed, so the tests do not need Python.
"""

import os

from mmdb_writer import MMDBWriter, MmdbF64, MmdbU16, MmdbU32
from netaddr import IPSet

HERE = os.path.dirname(os.path.abspath(__file__))

# network -> (city, country code, country, latitude, longitude, accuracy km, ASN, AS organisation)
PLACES = {
    "192.0.2.0/24": ("Berlin", "DE", "Germany", 52.52, 13.405, 20, 64500, "Example Carrier DE"),
    "203.0.113.0/24": ("Potsdam", "DE", "Germany", 52.3906, 13.0645, 20, 64500, "Example Carrier DE"),
    "198.51.100.0/24": ("Sydney", "AU", "Australia", -33.8688, 151.2093, 20, 64501, "Example Carrier AU"),
    "2001:db8:1::/48": ("New York", "US", "United States", 40.7128, -74.006, 20, 64502, "Example Carrier US"),
}


def city_record(city, code, country, lat, lon, accuracy):
    return {
        "city": {"names": {"en": city}},
        "country": {"iso_code": code, "names": {"en": country}},
        "location": {
            "latitude": MmdbF64(lat),
            "longitude": MmdbF64(lon),
            "accuracy_radius": MmdbU16(accuracy),
        },
    }


def main():
    city = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="Tessera-Test-City",
        languages=["en"],
        description="Tessera test fixture: documentation ranges mapped to cities",
    )
    asn = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="Tessera-Test-ASN",
        languages=["en"],
        description="Tessera test fixture: documentation ranges mapped to private ASNs",
    )
    for net, (name, code, country, lat, lon, acc, number, org) in PLACES.items():
        city.insert_network(IPSet([net]), city_record(name, code, country, lat, lon, acc))
        asn.insert_network(
            IPSet([net]),
            {"autonomous_system_number": MmdbU32(number), "autonomous_system_organization": org},
        )
    city.to_db_file(os.path.join(HERE, "test-city.mmdb"))
    asn.to_db_file(os.path.join(HERE, "test-asn.mmdb"))


if __name__ == "__main__":
    main()
