"""tierbot core: settings, domain, commands, catalog, router, ledger, runner, grid, pipeline."""
