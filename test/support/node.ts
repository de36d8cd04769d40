/** What the kernel tests of a simulated node share: its teardown (harness/sim/cluster.ts, where the simulated cluster's fixture uses it too). */
export { teardownNode } from '../../harness/sim/cluster.js';
