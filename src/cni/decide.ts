/**
 * The ADD decision, pure: given what the agent knows of the pod and its namespace, hold
 * the sandbox until it is programmed, let it pass, or fail it (the runtime retries).
 */
import { DEFAULT_ENABLEMENT_SELECTORS, enrollment, namespaceRulesOut, type EnrollmentContext, type NamespaceView, type PodView } from '../core/enrollment.js';
import { CNI_ERR, type CniError } from './request.js';

export type Decision = { kind: 'pass'; reason: string } | { kind: 'enroll'; pod: PodView } | { kind: 'error'; error: CniError };

/**
 * Before any pod lookup: a pod passes at once only when its namespace does not exist or
 * the enablement rules rule out every pod of it (src/core/enrollment.ts); else the pod's
 * own labels decide (a pod labelled ambient in an unlabelled namespace is held too).
 */
export function namespaceDecision(ns: NamespaceView | undefined, ctx: Pick<EnrollmentContext, 'selectors'>): Decision | null {
  if (!ns) return { kind: 'pass', reason: 'namespace unknown' };
  if (namespaceRulesOut(ns, ctx.selectors ?? DEFAULT_ENABLEMENT_SELECTORS)) return { kind: 'pass', reason: 'namespace selected by no enablement rule' };
  return null;
}

/**
 * The pod as the API knows it (without IPs at sandbox creation), with the sandbox's IPs
 * from prevResult: enrolled pods are held, others pass.
 */
export function podDecision(pod: PodView, ns: NamespaceView | undefined, sandboxIps: readonly string[], ctx: EnrollmentContext): Decision {
  const withIps: PodView = { ...pod, ips: sandboxIps.length > 0 ? [...sandboxIps] : pod.ips };
  const v = enrollment(withIps, ns, ctx);
  if (v.enrolled) return { kind: 'enroll', pod: withIps };
  if (v.reason === 'no IP yet') {
    return {
      kind: 'error',
      error: {
        code: CNI_ERR.invalidConfig,
        msg: `pod ${pod.namespace}/${pod.name} is to be enrolled but prevResult has no IP address: is ambient-redirect-cni after the primary plugin in the chain?`,
      },
    };
  }
  return { kind: 'pass', reason: v.reason };
}
