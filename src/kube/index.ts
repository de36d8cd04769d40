/** What the rest of the program needs from src/kube/ (the only place that knows the Kubernetes client). */
export { KubeError, kubeTransport, loadKubeConfig, type KubeTransport } from './http.js';
export { KubeMembership, type KubeMembershipOptions } from './membership.js';
export { DNS_REFRESH_MS, DnsServiceReader, serviceAddresses, type ServiceRef } from './dns.js';
