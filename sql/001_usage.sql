-- One row per LLM call, partitioned by month so that retention drops whole
-- partitions instead of running long DELETEs. The gateway creates the monthly
-- partitions ahead of time; llm_usage_default catches anything outside them.

CREATE SEQUENCE IF NOT EXISTS llm_usage_id_seq AS bigint;

CREATE TABLE IF NOT EXISTS llm_usage (
    id                  bigint      NOT NULL DEFAULT nextval('llm_usage_id_seq'),
    "timestamp"         timestamptz NOT NULL,
    model               text        NOT NULL,
    input_tokens        integer     NOT NULL DEFAULT 0,
    output_tokens       integer     NOT NULL DEFAULT 0,
    total_tokens        integer     NOT NULL DEFAULT 0,
    -- USD at the price of the moment; NULL when no price source knew the model.
    input_cost_usd      numeric(20, 12),
    output_cost_usd     numeric(20, 12),
    total_cost_usd      numeric(20, 12),
    purpose             text,
    ticker              text,
    cycle_id            text,
    response_time_ms    double precision NOT NULL DEFAULT 0,
    -- The idempotency key: a batch written twice is stored once.
    request_id          text        NOT NULL,
    upstream            text        NOT NULL DEFAULT '',
    endpoint            text        NOT NULL DEFAULT '',
    -- HTTP status the client received (502/504 when the upstream failed).
    status              smallint    NOT NULL DEFAULT 200,
    streamed            boolean     NOT NULL DEFAULT false,
    -- Part of input_tokens, priced at the cached rate.
    cached_input_tokens integer     NOT NULL DEFAULT 0,
    -- Part of output_tokens.
    reasoning_tokens    integer     NOT NULL DEFAULT 0,
    tags                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- false when the response ended before its usage arrived.
    usage_complete      boolean     NOT NULL DEFAULT true,
    -- true when tokens were estimated from what was seen, not reported.
    usage_estimated     boolean     NOT NULL DEFAULT false,
    -- "config" or "genai-prices"; NULL when unpriced.
    price_source        text,
    -- Label of the gateway key the client presented.
    key_label           text,
    -- Machine code of what went wrong, NULL for a normal call.
    error               text,
    PRIMARY KEY (id, "timestamp")
) PARTITION BY RANGE ("timestamp");

CREATE TABLE IF NOT EXISTS llm_usage_default PARTITION OF llm_usage DEFAULT;

-- Unique indexes on a partitioned table must hold the partition key; records
-- keep their timestamp through spool and replay, so this is the idempotency key.
CREATE UNIQUE INDEX IF NOT EXISTS llm_usage_request_id_key
    ON llm_usage (request_id, "timestamp");
CREATE INDEX IF NOT EXISTS llm_usage_timestamp_idx ON llm_usage ("timestamp");
CREATE INDEX IF NOT EXISTS llm_usage_purpose_idx ON llm_usage (purpose, "timestamp");
CREATE INDEX IF NOT EXISTS llm_usage_model_idx ON llm_usage (model, "timestamp");
CREATE INDEX IF NOT EXISTS llm_usage_ticker_idx
    ON llm_usage (ticker, "timestamp") WHERE ticker IS NOT NULL;
CREATE INDEX IF NOT EXISTS llm_usage_cycle_idx
    ON llm_usage (cycle_id, "timestamp") WHERE cycle_id IS NOT NULL;

-- The daily rollup, kept in the same statement as the rows it counts (by the
-- insert trigger of 004_daily_rollup_trigger.sql).
-- purpose is '' for calls without one (a primary key column cannot be NULL).
CREATE TABLE IF NOT EXISTS llm_usage_daily (
    day                 date    NOT NULL,
    model               text    NOT NULL,
    purpose             text    NOT NULL,
    calls               bigint  NOT NULL DEFAULT 0,
    -- Calls whose status was not 2xx, or that ended with an error code.
    errors              bigint  NOT NULL DEFAULT 0,
    input_tokens        bigint  NOT NULL DEFAULT 0,
    cached_input_tokens bigint  NOT NULL DEFAULT 0,
    output_tokens       bigint  NOT NULL DEFAULT 0,
    reasoning_tokens    bigint  NOT NULL DEFAULT 0,
    total_tokens        bigint  NOT NULL DEFAULT 0,
    input_cost_usd      numeric(24, 12) NOT NULL DEFAULT 0,
    output_cost_usd     numeric(24, 12) NOT NULL DEFAULT 0,
    cost_usd            numeric(24, 12) NOT NULL DEFAULT 0,
    latency_ms_sum      double precision NOT NULL DEFAULT 0,
    latency_count       bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (day, model, purpose)
);
