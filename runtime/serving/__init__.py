"""Many streams on one engine: the stream scheduler and the `edge-asr serve` WebSocket server."""
