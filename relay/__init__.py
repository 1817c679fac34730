"""crdtstate relay: sequences, persists and fans out Yjs updates."""
