"""Identity resolution: identifiers, their configuration and (next) the identity graph."""
