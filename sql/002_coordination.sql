-- What must happen once across replicas and restarts: an alert per threshold
-- and window, a daily summary per day, a retention run per day. A row here is
-- the claim; whoever inserts it first does the work.
CREATE TABLE IF NOT EXISTS gateway_once (
    kind        text        NOT NULL,
    -- The window or day the claim is for, e.g. "daily:2026-12-03:global:0.8".
    scope       text        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    claimed_by  text        NOT NULL,
    -- Set when the work behind the claim finished (an alert delivered).
    done_at     timestamptz,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (kind, scope)
);

-- Small shared state: the Telegram update offset, leases for single pollers.
CREATE TABLE IF NOT EXISTS gateway_state (
    name        text        PRIMARY KEY,
    value       jsonb       NOT NULL,
    holder      text,
    expires_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
