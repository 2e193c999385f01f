-- The SQLite form of ../postgres/0001_audit.sql (the embedded default store): UUIDs as text, the
-- payload as JSON text.
-- Audit records: one row per audit event, keyed by its event_id so that a redelivery or a
-- replay of audit.events never writes a second row.
CREATE TABLE IF NOT EXISTS audit_events (
    event_id        TEXT PRIMARY KEY,
    event_type      TEXT NOT NULL,
    event_version   TEXT NOT NULL,
    event_time_ms   INTEGER NOT NULL,
    org_id          INTEGER NOT NULL,
    source_service  TEXT NOT NULL,
    source_instance TEXT NOT NULL,
    correlation_id  TEXT,
    causation_id    TEXT,
    action          TEXT NOT NULL,
    actor           TEXT NOT NULL,
    target_type     TEXT NOT NULL,
    target_id       TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    payload         TEXT NOT NULL,
    written_at_ms   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_org_time ON audit_events (org_id, event_time_ms);
CREATE INDEX IF NOT EXISTS audit_events_action_time ON audit_events (action, event_time_ms);
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (event_time_ms);

-- The notification sender's ledger: what it delivered, once per alert and channel.
CREATE TABLE IF NOT EXISTS notification_deliveries (
    alert_id        TEXT NOT NULL,
    channel         TEXT NOT NULL,
    delivered_at_ms INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    PRIMARY KEY (alert_id, channel)
);
