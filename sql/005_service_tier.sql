-- The service tier that served a call, as the upstream names it ("default",
-- "flex", "priority", "scale"; NULL when it names none, as DeepSeek does). The
-- call's price depends on it: a flex call costs half a standard one.
-- Without a default the column is added to the catalog only, rows untouched.
ALTER TABLE llm_usage ADD COLUMN IF NOT EXISTS service_tier text;
