"""Alert rules, alerts, channels and notifications arrive with the alerts issue."""
