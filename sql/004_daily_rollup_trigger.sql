-- The daily rollup is kept by a trigger on llm_usage, as the per-ticker one
-- is: every writer (the recorder, a COPY, a hand-written INSERT) is counted
-- the same way, and none of them has to know the rollup exists. Until this
-- migration the recorder's batch statement upserted it itself.

-- Writers wait until this commits, so that no batch falls between the
-- switch: each is counted by the trigger or by the earlier batch statement,
-- never by both or neither.
LOCK TABLE llm_usage IN SHARE MODE;

-- Sees exactly the rows an INSERT or COPY stored (rows an ON CONFLICT
-- skipped are not in new_rows), once per statement, in its transaction.
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
        coalesce(sum(total_cost_usd), 0), sum(response_time_ms), count(*)
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

-- Triggers on one event fire in name order, so every statement takes the
-- daily rows before the per-ticker ones, which keeps replicas from
-- deadlocking across the two tables as well.
CREATE OR REPLACE TRIGGER llm_usage_roll_up_days
    AFTER INSERT ON llm_usage
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_usage_roll_up_days();
