-- The daily rollup by ticker: what the breakdown by ticker and a filter by
-- ticker read, so that neither grows with the number of stored calls. Only
-- calls with a ticker are counted here; purpose is '' for calls without one.

-- Writers wait until this commits, so no batch falls between the backfill
-- at the end and the trigger that takes over from it.
LOCK TABLE llm_usage IN SHARE MODE;

CREATE TABLE IF NOT EXISTS llm_usage_daily_ticker (
    day                 date    NOT NULL,
    ticker              text    NOT NULL,
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
    PRIMARY KEY (day, ticker, model, purpose)
);

-- A statement-level trigger sees exactly the rows an INSERT stored (rows an
-- ON CONFLICT skipped are not in new_rows), once per batch, in the batch's
-- transaction. 004_daily_rollup_trigger.sql keeps llm_usage_daily this way too.
CREATE OR REPLACE FUNCTION llm_usage_roll_up_tickers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO llm_usage_daily_ticker AS d (day, ticker, model, purpose, calls,
        errors, input_tokens, cached_input_tokens, output_tokens,
        reasoning_tokens, total_tokens, input_cost_usd, output_cost_usd,
        cost_usd, latency_ms_sum, latency_count)
    SELECT ("timestamp" AT TIME ZONE 'UTC')::date, ticker, model,
        coalesce(purpose, ''),
        count(*), count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL),
        sum(input_tokens), sum(cached_input_tokens), sum(output_tokens),
        sum(reasoning_tokens), sum(total_tokens),
        coalesce(sum(input_cost_usd), 0), coalesce(sum(output_cost_usd), 0),
        coalesce(sum(total_cost_usd), 0), sum(response_time_ms), count(*)
    FROM new_rows
    WHERE ticker IS NOT NULL
    GROUP BY 1, 2, 3, 4
    -- A fixed order keeps two replicas from deadlocking on the same rows.
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (day, ticker, model, purpose) DO UPDATE SET
        calls = d.calls + excluded.calls,
        errors = d.errors + excluded.errors,
        input_tokens = d.input_tokens + excluded.input_tokens,
        cached_input_tokens = d.cached_input_tokens + excluded.cached_input_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        reasoning_tokens = d.reasoning_tokens + excluded.reasoning_tokens,
        total_tokens = d.total_tokens + excluded.total_tokens,
        input_cost_usd = d.input_cost_usd + excluded.input_cost_usd,
        output_cost_usd = d.output_cost_usd + excluded.output_cost_usd,
        cost_usd = d.cost_usd + excluded.cost_usd,
        latency_ms_sum = d.latency_ms_sum + excluded.latency_ms_sum,
        latency_count = d.latency_count + excluded.latency_count;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER llm_usage_roll_up_tickers
    AFTER INSERT ON llm_usage
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_usage_roll_up_tickers();

-- Retention deletes old days from llm_usage_daily; the same days go here.
CREATE OR REPLACE FUNCTION llm_usage_trim_tickers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM llm_usage_daily_ticker t
    USING old_rows o
    WHERE t.day = o.day AND t.model = o.model AND t.purpose = o.purpose;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER llm_usage_trim_tickers
    AFTER DELETE ON llm_usage_daily
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_usage_trim_tickers();

-- Emptying the daily rollup empties this one too, so that they never hold
-- different days; rebuilding either from llm_usage is a manual step.
CREATE OR REPLACE FUNCTION llm_usage_empty_tickers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE llm_usage_daily_ticker;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER llm_usage_empty_tickers
    AFTER TRUNCATE ON llm_usage_daily
    FOR EACH STATEMENT EXECUTE FUNCTION llm_usage_empty_tickers();

-- Rows stored before this migration.
INSERT INTO llm_usage_daily_ticker (day, ticker, model, purpose, calls, errors,
    input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
    total_tokens, input_cost_usd, output_cost_usd, cost_usd, latency_ms_sum,
    latency_count)
SELECT ("timestamp" AT TIME ZONE 'UTC')::date, ticker, model, coalesce(purpose, ''),
    count(*), count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL),
    sum(input_tokens), sum(cached_input_tokens), sum(output_tokens),
    sum(reasoning_tokens), sum(total_tokens),
    coalesce(sum(input_cost_usd), 0), coalesce(sum(output_cost_usd), 0),
    coalesce(sum(total_cost_usd), 0), sum(response_time_ms), count(*)
FROM llm_usage
WHERE ticker IS NOT NULL
GROUP BY 1, 2, 3, 4
ON CONFLICT (day, ticker, model, purpose) DO NOTHING;
