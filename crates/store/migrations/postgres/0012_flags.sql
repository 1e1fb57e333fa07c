-- A release plan's guard can watch an SLO: its page alerts trip the guard (issue 12).
ALTER TABLE flag_guards ADD COLUMN slo_id TEXT;
