"""The report: collect runs from results/, render tables, plots and claims."""
