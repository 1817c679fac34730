"""crdtstate chaos: fault proxy, cluster harness, nemeses, checkers, simulation."""
