"""The one place that talks to Optuna: storage, sampler/pruner factories, ask/report/tell, leases."""
