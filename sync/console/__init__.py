"""The fleet console (`edge-fleet serve`): MQTT ingest into SQLite or PostgreSQL, alerts, and a
live web dashboard with a JSON API. Needs the `console` extra; devices never import it."""
