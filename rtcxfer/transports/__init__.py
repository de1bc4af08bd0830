"""rtcxfer's built-in transport plugins, registered like any third-party plugin."""
