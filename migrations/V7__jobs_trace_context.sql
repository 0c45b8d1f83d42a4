-- The trace context (`traceparent`) of the request that enqueued a job, so its run continues
-- that trace (telemetry.otlp_endpoint set); null when traces are not exported.
ALTER TABLE jobs ADD COLUMN trace_context text;
