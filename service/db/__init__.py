"""Our own hpo_* tables (teams, tokens, study specs, leases) and their queries."""
