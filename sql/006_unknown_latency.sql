-- A call whose latency nobody measured (one ingested without
-- response_time_ms) is stored with NULL instead of 0 ms, and the rollups
-- count a latency only where there is one, so such calls no longer pull
-- the average down. Rows stored before keep the 0 ms they were given.
-- Dropping NOT NULL and the default changes the catalog only: no rewrite.
ALTER TABLE llm_usage ALTER COLUMN response_time_ms DROP NOT NULL;
ALTER TABLE llm_usage ALTER COLUMN response_time_ms DROP DEFAULT;

-- The rollup functions of 004 and 003, with the latency sum and count taken
-- over the calls that have one. Replaced in this transaction, so a batch is
-- counted by the old function or the new, never by both.
CREATE OR REPLACE FUNCTION llm_usage_roll_up_days() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO llm_usage_daily AS d (day, model, purpose, calls, errors,
        input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
        total_tokens, input_cost_usd, output_cost_usd, cost_usd,
        latency_ms_sum, latency_count)
    SELECT ("timestamp" AT TIME ZONE 'UTC')::date, model, coalesce(purpose, ''),
        count(*), count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL),
        sum(input_tokens), sum(cached_input_tokens), sum(output_tokens),
        sum(reasoning_tokens), sum(total_tokens),
        coalesce(sum(input_cost_usd), 0), coalesce(sum(output_cost_usd), 0),
        coalesce(sum(total_cost_usd), 0),
        coalesce(sum(response_time_ms), 0), count(response_time_ms)
    FROM new_rows
    GROUP BY 1, 2, 3
    -- A fixed order keeps two replicas from deadlocking on the same rows.
    ORDER BY 1, 2, 3
    ON CONFLICT (day, model, purpose) DO UPDATE SET
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
        coalesce(sum(total_cost_usd), 0),
        coalesce(sum(response_time_ms), 0), count(response_time_ms)
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
