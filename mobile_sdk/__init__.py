"""Ferry mobile SDK (on-demand client). Empty until the mobile issue lands."""
