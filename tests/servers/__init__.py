"""Real servers the tests start on localhost (Azurite; PostgreSQL), loaded as pytest plugins."""
