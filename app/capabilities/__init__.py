"""Operations capabilities: one package each (health, metrics, docs, ...), each with its
settings section and ``enabled`` switch, routes, background work and checks. ``base`` says what
a capability is; ``app.main.CAPABILITIES`` lists them. Capabilities use the base (services,
repositories, the database) and ``app.core``; the base never imports them, and one capability
uses another only through that package's root."""
