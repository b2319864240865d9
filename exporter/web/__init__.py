"""The HTTP side: the server and its limits, TLS and basic auth, the endpoints (/metrics, /probe,
/sessions, the landing page)."""
