"""One analysis: an upload decoded, its faces found and scored, the verdict built."""
