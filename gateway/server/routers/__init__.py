"""The routes, one module per resource, each a module-level `router`: they translate HTTP
(parameters, statuses, headers) and leave the work to the rooms below. What a route needs
(settings, the Analyzer, the admission…) comes from gateway/server/deps.py."""
