"""Operations conventions: health probes (health.py), Prometheus metrics (metrics.py), JSON request logs
(logging.py). Each module has init_app(app); create_app calls them."""
