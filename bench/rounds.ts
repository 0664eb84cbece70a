// Owns how the benchmark compares setups on a noisy machine: rounds of
// mirrored slices. On a shared 2-core VM one setup's own rate moves by 20-30%
// between slices seconds apart, so setups measured one after the other are
// compared through that drift. Each round measures every setup twice, in the
// order A B C … C B A (the first setup rotating from round to round), so a
// drift linear over a round cancels from the ratio of any two setups' sums;
// a figure is then the median over the rounds of its per-round value. The same
// rounds give the control: each setup's second slice over its first, which a
// perfect machine would put at 1.00×. Its spread is what the machine alone
// moves a ratio by, the noise floor to read every ratio against.

/** One round: each setup's two slices, in the order they were measured. */
export type Round<S extends string, R> = Record<S, [R, R]>;

/** Runs `rounds` mirrored rounds of `measure` (one slice of one setup); `after` sees each round as it ends. */
export function mirroredRounds<S extends string, R>(
  setups: readonly S[],
  rounds: number,
  measure: (setup: S) => R,
  after?: (round: Round<S, R>, order: readonly S[], index: number) => void,
): Round<S, R>[] {
  const all: Round<S, R>[] = [];
  for (let i = 0; i < rounds; i++) {
    const half = setups.map((_, k) => setups[(i + k) % setups.length]!);
    const order = [...half, ...[...half].reverse()];
    const slices = Object.fromEntries(setups.map((setup) => [setup, [] as R[]])) as Record<S, R[]>;
    for (const setup of order) slices[setup].push(measure(setup));
    const round = slices as Round<S, R>;
    all.push(round);
    after?.(round, order, i);
  }
  return all;
}

/** The control of `setups` over every round: each one's second slice's rate over its first's. */
export function control<S extends string, R extends { rps: number }>(rounds: readonly Round<S, R>[], setups: readonly S[]): number[] {
  return rounds.flatMap((round) => setups.map((setup) => round[setup][1].rps / round[setup][0].rps));
}

/** A setup's two slices of a round, summed: the figure a round's ratios are taken between. */
export const roundRate = (slices: readonly [{ rps: number }, { rps: number }]): number => slices[0].rps + slices[1].rps;
