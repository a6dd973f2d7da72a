import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { LabIcon } from '@jupyterlab/ui-components';

import { PerperPanel } from './panel';

/** Three streams flowing into a function: the sidebar's tab icon. */
const perperIcon = new LabIcon({
  name: 'perper-lab:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="none" stroke="#616161" stroke-width="2" stroke-linecap="round">' +
    '<path d="M2 6c3 0 3 3 6 3s3-3 6-3"/><path d="M2 12h12"/><path d="M2 18c3 0 3-3 6-3s3 3 6 3"/>' +
    '</g><path class="jp-icon3" fill="#616161" d="M15 7l7 5-7 5z"/></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'perper-lab:sidebar',
  description: 'A left sidebar listing the streams, functions and workers of the perper_lab fabrics.',
  autoStart: true,
  optional: [ILayoutRestorer],
  activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null) => {
    const panel = new PerperPanel(app.serviceManager.serverSettings);
    panel.id = 'perper-lab-sidebar';
    panel.title.icon = perperIcon;
    panel.title.caption = 'Perper: fabrics, streams and functions';
    app.shell.add(panel, 'left', { rank: 600 });
    restorer?.add(panel, 'perper-lab-sidebar');
  }
};

export default plugin;
