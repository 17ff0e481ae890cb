-- What a call was charged per call rather than per token: the built-in tools
-- a Responses call ran (web search, file search), each billed per call, and
-- the per-request fee some models carry. fee_cost_usd is part of
-- total_cost_usd, beside input_cost_usd and output_cost_usd; NULL when the
-- call is unpriced, and in rows stored before fees were priced.
-- Constant defaults and a nullable column: added to the catalog only, no
-- stored row is rewritten.
ALTER TABLE llm_usage
    ADD COLUMN IF NOT EXISTS fee_cost_usd numeric(20, 12),
    ADD COLUMN IF NOT EXISTS web_search_calls integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS file_search_calls integer NOT NULL DEFAULT 0;
