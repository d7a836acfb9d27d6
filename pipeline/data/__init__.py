"""The data layer: the shard format (format), sample transforms (transforms, no Ray), Ray Data streams (streams)."""
