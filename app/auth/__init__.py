"""OAuth2 / SMART App Launch 2.0 and the access decision.

scopes (pure SMART scope algebra), models (mongoengine documents), server (authlib authorization server),
policy (the AccessPolicy the FHIR edge asks), consent (cross-province consents), smart (discovery),
views (login and approval pages), bindings (一人绑定多人), ratelimit, plugin (wiring).
"""
