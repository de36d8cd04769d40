/** Metrics and health of the agent: registry, readiness, latency tracking, HTTP server. */
export { AgentMetrics, reattachments, PREFIX, type MetricSources, type PassSummary } from './registry.js';
export { Readiness, type ReadinessState } from './readiness.js';
export { ProgrammingLatency, instrumentMembership } from './latency.js';
export {
  mapUsage,
  podCounters,
  pinnedMaps,
  readScrape,
  MAP_CAPACITY,
  type KernelSample,
  type MapUsage,
  type PodCounterSample,
  type PodSeries,
  type PinnedMaps,
} from './pinned.js';
export { serveMetrics, parseListenAddress, type MetricsServer } from './server.js';
